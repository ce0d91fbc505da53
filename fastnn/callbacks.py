"""Callbacks: code the Trainer runs at fixed points of fit, as in Keras.

Before fit calls any hook it sets ``callback.trainer`` (and so ``callback.model``). The hooks,
in the order fit calls them:

    on_train_begin(logs)                   once, before the first epoch
    on_epoch_begin(epoch, logs)            epoch counts from 0 across fits (trainer.epoch)
    on_train_batch_begin(batch, logs)
    on_train_batch_end(batch, logs)        logs: {'loss': this batch's loss, 'size': its rows}
    on_epoch_end(epoch, logs)              logs: loss, metrics, val_* and time of the epoch
    on_train_end(logs)                     always, also when fit ends by an exception

Setting ``trainer.stop_training = True`` ends fit after the current epoch.
"""


class Callback:
    """Base class: override the hooks you need; each gets (epoch or batch, logs dict)."""

    trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    @property
    def model(self):
        return None if self.trainer is None else self.trainer.model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass
