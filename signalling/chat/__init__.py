"""Chat: the model and rules, the store (memory and MongoDB), the chat.* handlers."""
