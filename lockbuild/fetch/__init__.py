"""Fetch: a content-addressed cache and verified downloads into it."""
