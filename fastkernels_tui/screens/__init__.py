"""The cockpit's screens: main, help, history, setup and the small dialogs."""
