"""``ppclient`` commands that read the inventory: find, locations, history, stats,
duplicates (:mod:`.commands`) and restore (:mod:`putplace.client.restore`).

They share one HTTP client (:mod:`.reader`), one set of connection options
(:mod:`.options`) and one way of printing server-supplied text safely (:mod:`.output`).
"""
