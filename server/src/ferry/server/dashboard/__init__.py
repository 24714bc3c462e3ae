"""The sync-status dashboard: server-rendered pages, one small vendored script for live updates.

Sign-in keeps the API token in an HttpOnly, SameSite=Strict cookie (`session`);
every page is rendered by `routes` from the same service functions the JSON API
uses, so a viewer sees exactly what the API would show them, and every write
button posts to an endpoint that checks the role again.
"""
