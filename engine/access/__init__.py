"""Who is calling and what they may do: bearer tokens and endpoint permissions (both planes)."""
