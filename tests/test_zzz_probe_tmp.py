def test_probe():
    from twisted.internet import reactor
    print("\nDELAYED", [c for c in reactor.getDelayedCalls() if c.active()])
    print("SOCKETS", [s for s in {*reactor.getReaders(), *reactor.getWriters()}])
