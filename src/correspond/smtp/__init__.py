"""SMTP submission (RFC 6409) with aiosmtplib: the adapter the sender uses (``smtp.client``)."""
