raise ValueError("configuration missing: SECRET_KEY")
