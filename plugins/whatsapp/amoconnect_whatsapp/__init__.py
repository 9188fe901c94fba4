"""amoconnect-whatsapp: the WhatsApp Business Cloud API for amoconnect."""
