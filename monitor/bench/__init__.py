"""`airtrace bench`: how well and how fast airtrace identifies music, against a classical baseline.

Stages: references (what is in the catalog and what is held out), queries and segments (what is
played to the engines), engines (airtrace per encoder, and the landmark baseline), report (tables).
"""
