"""Refuse names amoconnect or Python would refuse later, before anything is written."""

import keyword
import re
import sys

name = {{ cookiecutter.messenger_name | tojson }}
slug = {{ cookiecutter.messenger_slug | tojson }}
package = {{ cookiecutter.package_name | tojson }}
project = {{ cookiecutter.project_slug | tojson }}
checks = [
    (
        re.fullmatch(r"[A-Za-z][A-Za-z0-9 _-]{0,31}", name),
        f"messenger_name {name!r} must be letters, digits, spaces, '_' and '-', starting with a letter",
    ),
    (
        re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", slug),
        f"messenger_slug {slug!r} must be lowercase letters, digits, '_' and '-', starting with a letter "
        "(it is the plugin's and the messenger's name in amoconnect)",
    ),
    (
        package.isidentifier() and not keyword.iskeyword(package),
        f"package_name {package!r} must be a Python identifier and not a keyword",
    ),
    (
        re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", project),
        f"project_slug {project!r} is not a valid distribution name",
    ),
]
problems = [message for ok, message in checks if not ok]
for message in problems:
    print(f"ERROR: {message}", file=sys.stderr)
sys.exit(1 if problems else 0)
