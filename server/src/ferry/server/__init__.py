"""ferry.server"""
