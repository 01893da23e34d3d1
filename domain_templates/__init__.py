"""Jinja2 templates for libvirt domain and storage volume XML (package data)."""
