"""Pieces shared by the API, the token service and the client."""
