"""Delivery channels: email, webhooks, Apprise URLs, ... each one module implementing
``base.Channel``; ``registry.build_channels`` builds those the settings configure."""
