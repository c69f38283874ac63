"""End-to-end test harness: private rbldnsd, Postfix, smtp-sink and SMTP client helpers."""
