"""Delivery channels: email, webhooks, ... each one module implementing ``base.Channel``;
``registry.build_channels`` builds those the settings configure."""
