"""The pipeline's steps, in the order data passes them, each handing the next small frozen records:

ingest / mux (streams -> AudioWindow) -> windows (the window arithmetic) -> search (embed and FAISS search:
WindowHits) -> tracking (the step both runners call: the play state machine of plays, with its records in
play_state and its geometry in play_runs, over a StateStore: PlayEvent). matcher and calibration fit and
weigh alignments for the state machine and for identify (clips and files).
"""
