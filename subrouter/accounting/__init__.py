"""
Token accounting: one usage record per model response, whatever the provider,
transport or recording settings, kept compactly for months and summed for the
dashboard.
"""
