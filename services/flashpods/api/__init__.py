"""The Flashpods API service (flashpods-api)."""
