"""The enrollment domain: states and their transition table, the bank's input rules, records and messages."""
