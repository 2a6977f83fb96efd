"""agebias.evaluate"""
