"""Trainers built on minerva's native ops."""
