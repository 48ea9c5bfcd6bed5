# one line per suite; each module adds its own
