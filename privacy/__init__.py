"""tailored.privacy: the data subject's rights and the rules that protect them.

A layer below serving, bundles and training: it imports only ``tailored.data`` and the floor.
Every store that holds user data (the online state, the dataset, the bundles) implements
:class:`~tailored.privacy.erasure.Forgettable`; erasure walks all of them and leaves an
audit record.
"""
