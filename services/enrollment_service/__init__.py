"""The enrollment service: the bank's ten-step initial setup of a client certificate and an OTP app."""
