"""flashpods-token-service: JWT-SVID in, the secrets its SPIFFE ID may have out."""
