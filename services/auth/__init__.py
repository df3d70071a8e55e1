"""API tokens: bearer tokens with scopes, stored hashed."""
