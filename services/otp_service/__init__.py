"""The OTP service: soft tokens for the phone app, seed provisioning once after activation, TOTP verification."""
