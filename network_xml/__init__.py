"""Jinja2 templates for libvirt NAT and bridge network XML (package data)."""
