"""ferry.cli"""
