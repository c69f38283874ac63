"""spamgate: an SMTP-time scoring milter for Postfix and Sendmail."""

__version__ = "0.1.0"
