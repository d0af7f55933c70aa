"""The operator's console (``identify-queue console``): a small server-rendered web application.

settings.py   what it runs with, read once from the environment
data.py       what each page shows, read from Redis (status, history, waiting users, dead letters)
app.py        the Flask application: authentication, CSRF, headers, the pages and the actions
server.py     waitress around it, as ``serve`` has
templates/    Jinja2 pages (autoescaped); static/  the stylesheet and the one script
"""
