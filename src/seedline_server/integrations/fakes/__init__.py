"""Local fake METRC, BioTrackTHC and LIMS servers built from the reference specs.

They are real HTTPS servers on loopback (aiohttp), used by the tests and by ``seedline dev``:
they enforce what the real systems enforce (authentication, license scoping, paging limits,
time windows, rate limits) and can inject faults on request.
"""
