"""From attention rows to maps: the fast row capture, word spans, word maps, answer parsing, the Eq. 11/12 filters, numerics and audit records."""
