"""Small apps whose endpoints must, or must not, produce query findings."""
