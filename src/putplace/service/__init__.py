"""The rules of PutPlace, between HTTP (``putplace.server``) and the stores.

Nothing here knows about HTTP: callers pass plain values and get plain values back, and a
refusal is a :class:`~putplace.service.errors.ServiceError` whose message is meant for the
person who made the request. The app, ``ppserver``'s commands and the tests reach the
stores through :func:`~putplace.service.stores.open_stores`.
"""
