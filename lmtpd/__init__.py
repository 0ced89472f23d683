"""lmtpd: a mailing-list delivery agent for clubs, behind Postfix over LMTP."""

__version__ = "0.1.0"
