"""Where an address goes: ASN, AS name, country and legal zone, from embedded or configured data."""
