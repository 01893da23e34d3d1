"""kvmvps-admin: the operator's command line."""
