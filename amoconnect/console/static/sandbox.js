// The sandbox's page: both chats follow the fakes (GET /console/sandbox/state), and the two forms
// post without leaving the page. Without this script the page still works: each form posts and
// the page comes back.
"use strict";
(function () {
  const root = document.getElementById("sandbox");
  if (!root) {
    return;
  }
  const problem = document.getElementById("problem");
  const managerSend = document.getElementById("manager-send");
  let shown = "";

  function line(item, withStatus) {
    const li = document.createElement("li");
    li.className = "line from-" + item.who;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = item.text;
    li.appendChild(text);
    if (withStatus && item.status) {
      const status = document.createElement("span");
      status.className = "status status-" + item.status;
      status.textContent = root.dataset["status" + item.status[0].toUpperCase() + item.status.slice(1)] || item.status;
      if (item.error) {
        status.title = item.error;
      }
      li.append(" ", status);
    }
    return li;
  }

  function fill(id, items, withStatus) {
    const list = document.getElementById(id);
    list.replaceChildren(...items.map((item) => line(item, withStatus)));
    list.scrollTop = list.scrollHeight;
  }

  function say(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }

  async function refresh() {
    try {
      const answer = await fetch(root.dataset.state, { headers: { Accept: "application/json" } });
      if (answer.ok) {
        const text = await answer.text();
        if (text !== shown) {
          shown = text;
          const state = JSON.parse(text);
          fill("messenger-chat", state.messenger, false);
          fill("amocrm-chat", state.amocrm, true);
          managerSend.disabled = !state.can_answer;
          if (state.can_answer) {
            managerSend.removeAttribute("title");
          }
        }
      }
    } finally {
      window.setTimeout(refresh, 400);
    }
  }

  for (const form of document.querySelectorAll("form.say")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = form.elements.namedItem("text");
      const answer = await fetch(form.action, {
        method: "POST",
        headers: { Accept: "application/json" },
        body: new URLSearchParams(new FormData(form)),
      });
      const outcome = await answer.json();
      say(outcome.error || "");
      if (outcome.ok) {
        input.value = "";
      }
    });
  }
  window.setTimeout(refresh, 400);
})();
