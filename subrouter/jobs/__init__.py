"""
The periodic jobs, each a TimerService: usage polling, the state saver,
auto-switch, the transcript mirror.
"""
