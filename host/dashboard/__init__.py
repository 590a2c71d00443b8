"""The cluster dashboard: one HTML page, its stylesheet, its script and an icon (static/), served
by every agent (host/api/dashboard.py) and shipped as package data. There is no build step: the
files are what the browser runs. They hold no data; the page reads everything from the API, with
the token the person types in when the agent asks for one."""
