"""Imported at the start of a subprocess whose PYTHONPATH begins with this folder: installs ENCDEC_FAULT_AT."""

import fault_points

fault_points.install_from_environment()
