"""The store behind ``self.log`` (private: use ``System.log``)."""
