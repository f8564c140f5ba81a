"""The pipeline's steps, in the order data passes them, each handing the next small frozen records:

ingest / mux (streams -> AudioWindow) -> windows (the window arithmetic) -> search (embed and FAISS search:
WindowHits) -> tracking (the play state machine of plays, with matcher and calibration, over a StateStore:
PlayEvent). Both runners (monitor.embedded, monitor.fleet.worker) wire the same steps.
"""
