"""Numbered SQL migrations, installed with the package as ``lmtpd.migrations``."""
