"""A Django app for tests/clients/test_django.py: two models over the scenario tables (no project, no migrations)."""
