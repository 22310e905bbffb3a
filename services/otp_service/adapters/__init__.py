"""Adapters of the OTP service: group_commit, the store wrapper that shares one store round among concurrent commits."""
