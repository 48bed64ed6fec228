"""The exception queue pages; exceptions/urls.py says which module serves which."""
