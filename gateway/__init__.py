"""The HTTPS gateway: the only part customers reach; terminates mTLS and maps a small JSON API onto the services."""
