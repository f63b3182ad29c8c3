"""The ClientApp and what it runs (see DESIGN.md)."""

from client.import_diet import install as _install_import_diet

_install_import_diet()
