"""Screens pushed over the tabs: dialogs and the job detail."""
